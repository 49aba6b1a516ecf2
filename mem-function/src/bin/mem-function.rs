//! The cache-node function. Runs only under a Lambda Runtime API (AWS Lambda, the
//! `lambda-emulator`, or `cargo lambda watch`); see `mem_function::function` for its
//! environment variables.

use mem_function::function::{FunctionEnv, MemFunction};
use mem_function::store::RUNTIME_RESERVE;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// How often the parent watchdog checks that the emulator that started us is still there.
const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    mem_function::init_logging("info");
    // lambda_runtime panics when these are missing; say what is wrong instead.
    for var in [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
    ] {
        if std::env::var_os(var).is_none() {
            eprintln!(
                "mem-function: {var} is not set. This binary runs under a Lambda Runtime API \
                 (AWS Lambda, lambda-emulator, or `cargo lambda watch`)."
            );
            return ExitCode::from(2);
        }
    }
    let env = match FunctionEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mem-function: {e}");
            return ExitCode::from(2);
        }
    };
    watch_parent();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mem-function: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The provider stops a function whose memory passes its size: refuse chunks before that,
    // whatever the accounting missed (see mem_function::store, "The resident limit").
    let resident_limit = (env.memory_mb * 1024 * 1024).saturating_sub(RUNTIME_RESERVE);
    let f = MemFunction::new(env);
    f.store().set_resident_limit(Some(resident_limit));
    tracing::info!(instance = %f.instance_id(), capacity = f.store().ack().stats.capacity_bytes, resident_limit, "mem-function starting");
    let result = rt.block_on(f.run_lambda());
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Typically the Runtime API went away (the emulator stopped): exit, do not linger.
            let _ = writeln!(
                std::io::stderr(),
                "mem-function: runtime API loop ended: {e}"
            );
            ExitCode::FAILURE
        }
    }
}

/// With `MEMFN_PARENT_PID` set (the emulator sets it), exit as soon as that process is no
/// longer our parent, so a killed emulator leaves no function processes behind.
fn watch_parent() {
    let Some(expected) = std::env::var("MEMFN_PARENT_PID")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            if nix::unistd::getppid().as_raw() != expected {
                // stderr may be a pipe to the dead parent: never panic on writing to it.
                let _ = writeln!(
                    std::io::stderr(),
                    "mem-function: parent {expected} is gone, exiting"
                );
                std::process::exit(3);
            }
            std::thread::sleep(PARENT_CHECK_INTERVAL);
        }
    });
}
