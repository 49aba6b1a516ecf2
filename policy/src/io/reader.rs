//! Reads the registry trace: the CSV itself, a `.csv.gz`, or the `.tar.gz` it ships in
//! (the first `.csv` member is used). The file is only read, never copied.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::trace::{Trace, parse_timestamp};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceReadError {
    /// Opening or reading the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CSV is malformed.
    #[error("parsing {path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: csv::Error,
    },
    /// A required column is missing from the header.
    #[error("{path}: no `{column}` column in the header")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: &'static str,
    },
    /// A row has an unparsable field.
    #[error("{path}: row {row}: bad {field} {value:?}")]
    BadField {
        /// The file.
        path: PathBuf,
        /// 1-based data row.
        row: u64,
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
    },
    /// The archive has no `.csv` member.
    #[error("{path}: no .csv file in the archive")]
    NoCsv {
        /// The file.
        path: PathBuf,
    },
}

/// Column with the request time.
pub const COL_TIMESTAMP: &str = "timestamp";
/// Column with the object key.
pub const COL_URI: &str = "http.request.uri";
/// Column with the bytes written.
pub const COL_WRITTEN: &str = "http.response.written";

/// Reads a trace file (`.csv`, `.csv.gz` or `.tar.gz`/`.tgz`).
pub fn read_trace(path: &Path) -> Result<Trace, TraceReadError> {
    let io = |source| TraceReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
        for entry in archive.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            let is_csv = entry
                .path()
                .map(|p| p.to_string_lossy().to_ascii_lowercase().ends_with(".csv"))
                .unwrap_or(false);
            if is_csv {
                return read_csv(entry, path);
            }
        }
        Err(TraceReadError::NoCsv {
            path: path.to_path_buf(),
        })
    } else if name.ends_with(".gz") {
        read_csv(flate2::read::GzDecoder::new(BufReader::new(file)), path)
    } else {
        read_csv(BufReader::new(file), path)
    }
}

/// Parses the trace CSV from any reader (`path` is only for messages).
pub fn read_csv<R: Read>(reader: R, path: &Path) -> Result<Trace, TraceReadError> {
    let csv_err = |source| TraceReadError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let col = |column: &'static str| {
        headers
            .iter()
            .position(|h| h.trim() == column)
            .ok_or(TraceReadError::MissingColumn {
                path: path.to_path_buf(),
                column,
            })
    };
    let (ct, cu, cw) = (col(COL_TIMESTAMP)?, col(COL_URI)?, col(COL_WRITTEN)?);
    let mut records = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(csv_err)?;
        let bad = |field: &'static str, value: &str| TraceReadError::BadField {
            path: path.to_path_buf(),
            row: i as u64 + 1,
            field,
            value: value.to_string(),
        };
        let ts = row.get(ct).unwrap_or("");
        let t = parse_timestamp(ts).ok_or_else(|| bad(COL_TIMESTAMP, ts))?;
        let uri = row.get(cu).unwrap_or("").trim();
        if uri.is_empty() {
            return Err(bad(COL_URI, uri));
        }
        let w = row.get(cw).unwrap_or("");
        let bytes: f64 = w.trim().parse().map_err(|_| bad(COL_WRITTEN, w))?;
        if !(bytes.is_finite() && bytes >= 0.0) {
            return Err(bad(COL_WRITTEN, w));
        }
        records.push((t, uri.to_string(), bytes as u64));
    }
    Ok(Trace::from_records(records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CSV: &str = ",Unnamed: 0,host,http.request.method,http.request.uri,http.response.status,http.response.written,timestamp
2,2,h,GET,v2/a/b/blobs/2,200,20000000.0,2017-06-20 00:00:40.000
1,1,h,GET,v2/a/b/blobs/1,200,10485760.0,2017-06-20 00:00:26.626
3,3,h,GET,v2/a/b/blobs/1,206,5.0,2017-06-20 00:01:00.000
";

    #[test]
    fn reads_csv_tar_gz_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let csv_path = dir.path().join("t.csv");
        std::fs::write(&csv_path, CSV).unwrap();
        let plain = read_trace(&csv_path).unwrap();
        assert_eq!(plain.keys, vec!["v2/a/b/blobs/1", "v2/a/b/blobs/2"]);
        assert_eq!(plain.sizes, vec![10_485_760, 20_000_000]);
        assert_eq!(plain.requests.len(), 3);
        assert_eq!(plain.requests[0].t_ms, 26_626);

        let tgz = dir.path().join("t.tar.gz");
        {
            let enc = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(CSV.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "dir/t.csv", CSV.as_bytes()).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        assert_eq!(read_trace(&tgz).unwrap(), plain);

        let gz = dir.path().join("t.csv.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(CSV.as_bytes()).unwrap();
        enc.finish().unwrap();
        assert_eq!(read_trace(&gz).unwrap(), plain);
    }

    #[test]
    fn reports_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        assert!(matches!(
            read_trace(&p),
            Err(TraceReadError::MissingColumn {
                column: "timestamp",
                ..
            })
        ));
    }
}
