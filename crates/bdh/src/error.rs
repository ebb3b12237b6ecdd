//! The library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong at an edge a user can reach.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not a valid BDH model.
    #[error("invalid config: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done ("reading", "writing", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A file exists but is not in the expected format.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor is missing from a checkpoint or golden file.
    #[error("{path}: no tensor named `{name}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has the wrong shape or type for the config.
    #[error("tensor `{name}`: expected {expected}, found {found}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// What the config requires.
        expected: String,
        /// What was found.
        found: String,
    },
    /// Training produced a loss that is not a finite number.
    #[error("the loss became {loss} at step {step}; {kept}")]
    Diverged {
        /// The step whose loss was not finite.
        step: usize,
        /// The loss.
        loss: f32,
        /// Which checkpoint is kept.
        kept: String,
    },
    /// Training made a parameter or an optimizer moment NaN or infinite.
    #[error("the parameters became NaN or infinite by step {step}; {kept}")]
    NonFinite {
        /// The last step taken.
        step: usize,
        /// Which checkpoint is kept.
        kept: String,
    },
    /// Something the user gave that the model cannot take (a token out of range, an
    /// empty text, an option out of its range, a request).
    #[error("bad input: {0}")]
    Input(String),
    /// A size refused before anything was allocated: it would not fit in memory.
    #[error("{what} would need {}{}", bytes(*.need), .have.map_or(String::new(), |h| format!(", {} available", bytes(Some(h)))))]
    TooLarge {
        /// What would have been allocated.
        what: String,
        /// Bytes it would need (`None`: more than a number can say).
        need: Option<u64>,
        /// Bytes the machine has available, where known.
        have: Option<u64>,
    },
    /// Parts of the program that do not fit together — buffers made for another
    /// model or family, a backward after a forward that has none: a bug in the
    /// caller, not in what the user gave.
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// A request about a run that cannot be met as asked: a directory that holds no
    /// run, an override of a setting the run takes from elsewhere. The message is a
    /// whole sentence naming the directory or the override, and what to do instead.
    #[error("{0}")]
    Refused(String),
    /// A GPU that could not be found, started or used; the message names what was
    /// tried and what to do.
    #[error("{0}")]
    Device(String),
    /// An error met while doing what `doing` says.
    #[error("{doing}: {cause}")]
    Context {
        /// What was being done, e.g. "loading the tokenizer".
        doing: String,
        /// What went wrong.
        cause: Box<Error>,
    },
}

/// Bytes as a person reads them.
fn bytes(n: Option<u64>) -> String {
    match n {
        None => "more bytes than the address space holds".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{b} bytes"),
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), cause: source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    /// This error, as met while doing what `doing` says.
    pub(crate) fn context(self, doing: impl Into<String>) -> Self {
        Error::Context { doing: doing.into(), cause: Box::new(self) }
    }
}
