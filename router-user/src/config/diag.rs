//! Diagnostics: every config error names the file, the line, the resource,
//! what was expected and what to do.
use std::fmt;

use thiserror::Error;

/// One problem in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem is not tied to a line (e.g. an unreadable file).
    pub line: u64,
    pub column: u64,
    /// `Kind namespace/name`, when known.
    pub resource: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": ")?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// The config was rejected; nothing of it was applied.
#[derive(Clone, Debug, Error)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "config rejected: {n} error{} (nothing was applied; the last good config keeps serving)",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while loading and validating.
#[derive(Debug, Default)]
pub struct Diags {
    pub errors: Vec<Diagnostic>,
}

impl Diags {
    pub fn push(
        &mut self,
        file: &str,
        line: u64,
        resource: Option<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(Diagnostic {
            file: file.to_string(),
            line,
            column: 0,
            resource,
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn into_result<T>(mut self, ok: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(ok)
        } else {
            self.errors
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            self.errors.dedup();
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }
}
