//! One error type for the library. Environment and input problems come back as `Error` with a
//! message that names the thing and says what to do; broken internal shape contracts panic.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched the request (or no driver is installed).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused the device request.
    #[error("could not open the GPU device: {0}")]
    Device(String),
    /// A WGSL shader or compute pipeline failed validation or compilation.
    #[error("kernel `{kernel}` failed to build:\n{message}")]
    Shader { kernel: String, message: String },
    /// A tensor exceeds what one buffer or binding can hold on this adapter.
    #[error("{0}")]
    TooLarge(String),
    /// The device ran out of memory.
    #[error("out of GPU memory while {0}; try a smaller shape, fewer tokens, or a GPU with more memory")]
    OutOfMemory(String),
    /// A plan needs more memory than the budget (device or host) allows; nothing was allocated.
    #[error("{0}")]
    OverBudget(String),
    /// Any other error reported by the GPU runtime.
    #[error("GPU error while {context}: {message}")]
    Gpu { context: String, message: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but its content is wrong (bad header, missing or mis-shaped tensor, ...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A user-supplied value is invalid (CLI flag, tensor shape, dtype, config key).
    #[error("{0}")]
    Input(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }
}
