//! Optional bearer-token authentication of the HTTP API (`http_token_file`).
//!
//! [`BearerToken`] is the secret, read once at start from a file (so that it appears in
//! no process listing), surrounding whitespace trimmed; an unreadable, empty or non-ASCII
//! file is a [`TokenError`], which the configuration reports as a start-up error. Its
//! `Debug` never shows the token.
//!
//! [`require_bearer`] is the axum middleware [`super::http::app`] installs when a token is
//! configured: every request but `GET`/`HEAD /healthz` (the health checks of load
//! balancers and orchestrators, which carry no credentials) must carry
//! `Authorization: Bearer <token>` (RFC 6750; the scheme is case-insensitive). Unknown
//! paths are refused too, so an unauthenticated client learns nothing about the routes.
//! A refusal is a 401 with the API's usual `{"error", "kind": "unauthorized"}` body and a
//! `WWW-Authenticate` challenge, counted by [`AuthFailure`] in
//! `kvroute_http_unauthorized_total`. The comparison takes a time that depends on the
//! configured token's length only, not on how much of it a guess gets right.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api_error::{ApiError, ErrorKind};
use super::state::AppState;

/// Longest accepted token file, in bytes (a token is a few dozen).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why a token file cannot be used.
#[derive(Debug)]
pub enum TokenError {
    /// The file could not be opened or read (or is not UTF-8).
    Read { path: PathBuf, error: std::io::Error },
    /// The file holds nothing but whitespace.
    Empty { path: PathBuf },
    /// The file is over [`MAX_TOKEN_FILE_BYTES`].
    TooLong { path: PathBuf },
    /// The token has a character that cannot be sent in an HTTP header as is (only
    /// visible ASCII, `!` to `~`, is accepted).
    InvalidCharacter { path: PathBuf },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            TokenError::Empty { path } => write!(f, "{} is empty (it must hold the bearer token)", path.display()),
            TokenError::TooLong { path } => {
                write!(
                    f,
                    "{} is over {MAX_TOKEN_FILE_BYTES} bytes (it must hold only the bearer token)",
                    path.display()
                )
            }
            TokenError::InvalidCharacter { path } => write!(
                f,
                "the token in {} has a character other than visible ASCII (`!` to `~`): whitespace inside it, \
                 control characters and non-ASCII characters are not accepted",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Whether the token file at `path` may be read by users other than its owner (group or
/// world permission bits on Unix; never on other systems). The daemon warns: anyone who
/// can read the file can call the API.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The HTTP API's bearer token. Cloning shares it; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path`: the whole file, surrounding whitespace trimmed.
    pub fn from_file(path: &Path) -> Result<BearerToken, TokenError> {
        let read_error = |error| TokenError::Read { path: path.to_owned(), error };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        // One byte over the limit tells a file at the limit from a longer one (and a
        // mistaken /dev/zero is not read forever).
        file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text).map_err(read_error)?;
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(TokenError::TooLong { path: path.to_owned() });
        }
        BearerToken::new(&text).map_err(|error| match error {
            TokenRefusal::Empty => TokenError::Empty { path: path.to_owned() },
            TokenRefusal::InvalidCharacter => TokenError::InvalidCharacter { path: path.to_owned() },
        })
    }

    /// A token from text, surrounding whitespace trimmed.
    pub fn new(text: &str) -> Result<BearerToken, TokenRefusal> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenRefusal::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenRefusal::InvalidCharacter);
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether `presented` is the token. Every byte of the token is compared whatever
    /// `presented` holds, so the time taken tells nothing about how close a guess is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut difference = u8::from(presented.len() != expected.len());
        for (i, &byte) in expected.iter().enumerate() {
            // A missing byte differs from any token byte.
            let other = presented.get(i).copied().unwrap_or(!byte);
            // black_box: the optimiser must not stop at the first difference.
            difference = std::hint::black_box(difference | (byte ^ other));
        }
        difference == 0
    }
}

/// Why a text is not a usable token (see [`BearerToken::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Empty,
    InvalidCharacter,
}

/// Why a request was refused with 401, as the `reason` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not one `Bearer <token>` credential.
    Malformed,
    /// A bearer token that is not the configured one.
    WrongToken,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 3] = [AuthFailure::Missing, AuthFailure::Malformed, AuthFailure::WrongToken];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::WrongToken => "wrong_token",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "this endpoint requires an `Authorization: Bearer <token>` header",
            AuthFailure::Malformed => "the Authorization header is not a single `Bearer <token>` credential",
            AuthFailure::WrongToken => "wrong bearer token",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 section 3).
    fn challenge(self) -> &'static str {
        match self {
            AuthFailure::Missing => r#"Bearer realm="kvroute""#,
            AuthFailure::Malformed => r#"Bearer realm="kvroute", error="invalid_request""#,
            AuthFailure::WrongToken => r#"Bearer realm="kvroute", error="invalid_token""#,
        }
    }
}

/// Whether the request may go without a token: the health check.
fn is_open(request: &Request) -> bool {
    request.uri().path() == "/healthz" && matches!(*request.method(), Method::GET | Method::HEAD)
}

/// Checks the request's `Authorization` header against `token`.
pub fn check(token: &BearerToken, headers: &HeaderMap) -> Result<(), AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let presented = bearer_credentials(value.as_bytes()).ok_or(AuthFailure::Malformed)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(AuthFailure::WrongToken)
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive, one or more
/// spaces after it), or `None`.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.trim_ascii().split_at_checked("bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    // A separator is required ("Bearerxyz" is another scheme), and a token after it.
    (token.len() < rest.len() && !token.is_empty()).then_some(token)
}

/// The middleware: passes the request on when `state` has no token, when it is the health
/// check, or when it carries the token; otherwise answers 401 and counts it.
pub async fn require_bearer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = state.http_token() else {
        return next.run(request).await;
    };
    if is_open(&request) {
        return next.run(request).await;
    }
    match check(token, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(failure) => {
            state.metrics.record_unauthorized(failure);
            let mut response = ApiError::new(ErrorKind::Unauthorized, failure.message()).into_response();
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(failure.challenge()));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("kvroute-token-{}", std::process::id()));
        std::fs::write(&path, "secret").unwrap();
        for (mode, shared) in [(0o600, false), (0o640, true), (0o644, true), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&path), shared, "mode {mode:o}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!readable_by_others(&path), "a missing file is not reported");
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let token = BearerToken::new("  s3cret-token\n").expect("token");
        assert!(token.matches(b"s3cret-token"));
        assert_eq!(BearerToken::new(" \n\t"), Err(TokenRefusal::Empty));
        assert_eq!(BearerToken::new("two words"), Err(TokenRefusal::InvalidCharacter));
        assert_eq!(BearerToken::new("caf\u{e9}"), Err(TokenRefusal::InvalidCharacter));
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn matching_is_exact() {
        let token = BearerToken::new("abcdef").expect("token");
        assert!(token.matches(b"abcdef"));
        for wrong in [&b""[..], b"abcde", b"abcdefg", b"abcdeF", b"bbcdef", b"\xff\xff\xff\xff\xff\xff"] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn authorization_headers_are_parsed() {
        let token = BearerToken::new("abc").expect("token");
        assert_eq!(check(&token, &headers(&["Bearer abc"])), Ok(()));
        assert_eq!(check(&token, &headers(&["bearer   abc "])), Ok(()));
        assert_eq!(check(&token, &headers(&[])), Err(AuthFailure::Missing));
        for malformed in ["Basic YWJj", "Bearer", "Bearer ", "Bearerabc", "abc", ""] {
            assert_eq!(check(&token, &headers(&[malformed])), Err(AuthFailure::Malformed), "{malformed:?}");
        }
        assert_eq!(check(&token, &headers(&["Bearer abc", "Bearer abc"])), Err(AuthFailure::Malformed));
        assert_eq!(check(&token, &headers(&["Bearer abd"])), Err(AuthFailure::WrongToken));
        assert_eq!(check(&token, &headers(&["Bearer abc abc"])), Err(AuthFailure::WrongToken));
    }

    #[test]
    fn token_files_are_read_once_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-123\n").expect("write");
        assert!(BearerToken::from_file(&path).expect("token").matches(b"tok-123"));
        std::fs::write(&path, "\n  \n").expect("write");
        assert!(matches!(BearerToken::from_file(&path), Err(TokenError::Empty { .. })));
        std::fs::write(&path, "a".repeat(MAX_TOKEN_FILE_BYTES as usize + 1)).expect("write");
        assert!(matches!(BearerToken::from_file(&path), Err(TokenError::TooLong { .. })));
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        assert!(matches!(BearerToken::from_file(&path), Err(TokenError::Read { .. })));
        let missing = dir.path().join("missing");
        let error = BearerToken::from_file(&missing).expect_err("missing file");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
