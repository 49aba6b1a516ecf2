//! mem-function
