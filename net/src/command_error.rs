//! [`CommandError`]: what a `kvroute` subcommand that has no typed error of its own
//! (`publish`, `bridge`) reports before exiting: one message.

#[derive(Debug)]
pub struct CommandError(String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandError {}

/// A [`CommandError`] with `message`.
pub fn error(message: impl Into<String>) -> CommandError {
    CommandError(message.into())
}
