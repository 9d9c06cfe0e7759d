//! One error type: a message naming the step and the object, rendered once in `main`.

use std::fmt;
use std::io;

/// A failure message and the exit status it ends the starter with (255
/// unless the payload could not be executed: 126 or 127, as shells say).
#[derive(Debug)]
pub struct Error {
    msg: String,
    pub code: i32,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error { msg: msg.into(), code: 255 }
    }

    pub fn with_code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    /// `what: reason` for a failed system call.
    pub fn io(what: impl fmt::Display, e: io::Error) -> Self {
        Error::new(format!("{what}: {}", describe(&e)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

/// A short lower-case reason, without Rust's "(os error N)" suffix.
pub fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Extension for attaching the step to an `io::Result`.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

/// Render bytes (a path or name from the request) for a message.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
