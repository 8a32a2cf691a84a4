//! `kvroute.KvrouteError`: what the router refused, with the router's own message. It is
//! a `ValueError`, so code that catches bad input generically still catches it.

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

pyo3::create_exception!(
    kvroute,
    KvrouteError,
    PyValueError,
    "The router refused a call: unknown worker, empty prompt, bad configuration, an event batch that does not decode, ..."
);

/// Any error of the crates below as a `KvrouteError` carrying its message.
pub(crate) fn refused(error: impl std::fmt::Display) -> PyErr {
    KvrouteError::new_err(error.to_string())
}
