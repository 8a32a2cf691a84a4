//! A prompt's token ids as Python hands them over: a list or tuple of ints (copied, each
//! checked), or any object with the buffer protocol, one-dimensional and contiguous:
//! NumPy `uint32` arrays and `array('I')` are read in place (no copy, so the GIL can be
//! released while the router reads them); other integer buffers (NumPy's default
//! `int64`, `int32`, ...) are converted with a range check. An id outside `0..2**32` is
//! a `ValueError` naming its position, a non-integer a `TypeError`.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// Token ids, borrowed from a `uint32` buffer or owned.
pub(crate) enum TokenIds {
    /// A C-contiguous, one-dimensional `uint32` buffer, held (so it cannot be freed or
    /// resized) until this is dropped.
    Shared(PyBuffer<u32>),
    Owned(Vec<u32>),
}

impl TokenIds {
    pub(crate) fn extract(obj: &Bound<'_, PyAny>) -> PyResult<TokenIds> {
        if let Ok(list) = obj.cast::<PyList>() {
            return from_items(list.len(), list.iter()).map(TokenIds::Owned);
        }
        if let Ok(tuple) = obj.cast::<PyTuple>() {
            return from_items(tuple.len(), tuple.iter()).map(TokenIds::Owned);
        }
        if let Ok(buffer) = PyBuffer::<u32>::get(obj) {
            if buffer.dimensions() != 1 || buffer.as_slice_ptr().is_none() {
                return Err(PyValueError::new_err("token ids must be a one-dimensional contiguous array"));
            }
            return Ok(TokenIds::Shared(buffer));
        }
        if let Ok(buffer) = PyBuffer::<i64>::get(obj) {
            return from_buffer(obj.py(), &buffer).map(TokenIds::Owned);
        }
        if let Ok(buffer) = PyBuffer::<i32>::get(obj) {
            return from_buffer(obj.py(), &buffer).map(TokenIds::Owned);
        }
        if let Ok(buffer) = PyBuffer::<u64>::get(obj) {
            return from_buffer(obj.py(), &buffer).map(TokenIds::Owned);
        }
        Err(PyTypeError::new_err(format!(
            "token ids must be a list of ints, an array('I') or a NumPy uint32 array, not {}",
            obj.get_type().name()?
        )))
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            TokenIds::Shared(buffer) => {
                let ptr = buffer.as_slice_ptr().expect("checked contiguous at extraction");
                // SAFETY: the buffer is C-contiguous `u32`s (format, item size and
                // contiguity checked by `PyBuffer::get` and at extraction) and stays
                // exported, so neither freed nor resized, while `self` holds the view,
                // which outlives the returned borrow. The router only reads it; a Python
                // thread writing the same array concurrently is the caller's race, as
                // with any NumPy function that releases the GIL (ids are plain `u32`s:
                // a torn write yields other ids, never invalid memory).
                unsafe { ptr.as_ref() }
            }
            TokenIds::Owned(ids) => ids,
        }
    }
}

fn from_items<'py>(len: usize, items: impl Iterator<Item = Bound<'py, PyAny>>) -> PyResult<Vec<u32>> {
    let mut ids = Vec::with_capacity(len);
    for (position, item) in items.enumerate() {
        match item.extract::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => return Err(bad_item(&item, position)),
        }
    }
    Ok(ids)
}

fn bad_item(item: &Bound<'_, PyAny>, position: usize) -> PyErr {
    match item.extract::<i128>() {
        Ok(value) => out_of_range(value, position),
        Err(_) => PyTypeError::new_err(format!(
            "token id at position {position} is not an int ({})",
            item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )),
    }
}

fn out_of_range(value: i128, position: usize) -> PyErr {
    PyValueError::new_err(format!("token id {value} at position {position} is outside 0..2**32"))
}

fn from_buffer<T>(py: Python<'_>, buffer: &PyBuffer<T>) -> PyResult<Vec<u32>>
where
    T: pyo3::buffer::Element + Copy + Into<i128>,
{
    if buffer.dimensions() != 1 {
        return Err(PyValueError::new_err("token ids must be a one-dimensional array"));
    }
    let values = buffer.to_vec(py)?;
    values
        .into_iter()
        .enumerate()
        .map(|(position, value)| {
            let value: i128 = value.into();
            u32::try_from(value).map_err(|_| out_of_range(value, position))
        })
        .collect()
}
