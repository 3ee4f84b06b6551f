//! The one error type of the Rust core; `py.rs` maps each variant to a Python exception.

use std::fmt;

/// Everything the tokenizer, detokenizer, chat templates and grammars can fail with.
///
/// Variants carry plain strings so the core stays free of pyo3 and the messages read
/// the same from Rust tests and from Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A tokenizer file could not be read at all.
    Io { path: String, message: String },
    /// A tokenizer file was read but is not a tokenizer we can use.
    Format { path: String, message: String },
    /// Vocabulary data or options given directly (not from a file) are unusable.
    Vocab(String),
    /// A token id outside the vocabulary (or a gap in it).
    TokenId { id: i64, vocab_size: usize },
    /// The encoding engine rejected the input.
    Encode(String),
    /// A chat template failed to compile or render, or called `raise_exception`.
    Template(String),
    /// A JSON schema that cannot be compiled into a grammar, or a grammar that failed mid-reply.
    Grammar(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &str, err: impl fmt::Display) -> Self {
        Error::Io {
            path: path.to_owned(),
            message: err.to_string(),
        }
    }

    pub(crate) fn format(path: &str, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn vocab(message: impl Into<String>) -> Self {
        Error::Vocab(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, message } => {
                write!(f, "cannot read tokenizer file {path:?}: {message}")
            }
            Error::Format { path, message } => {
                write!(f, "invalid tokenizer file {path:?}: {message}")
            }
            Error::Vocab(message) => write!(f, "invalid vocabulary: {message}"),
            Error::TokenId { id, vocab_size } => write!(
                f,
                "token id {id} is not in the vocabulary (valid ids are 0..{vocab_size})"
            ),
            Error::Encode(message) => write!(f, "cannot encode text: {message}"),
            Error::Template(message) | Error::Grammar(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_the_id() {
        let e = Error::io("/x/tokenizer.json", "No such file or directory");
        assert!(e.to_string().contains("\"/x/tokenizer.json\""));
        let e = Error::TokenId {
            id: -1,
            vocab_size: 10,
        };
        assert_eq!(
            e.to_string(),
            "token id -1 is not in the vocabulary (valid ids are 0..10)"
        );
    }
}
