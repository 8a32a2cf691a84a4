//! Engine event objects from Python as the msgpack payload the engines publish, so that
//! `Router.apply_events` has one decoder (core's `engine_events::decode`) for bytes and
//! objects alike.
//!
//! What is accepted is what the decoder accepts (REFERENCE.md section 2): a batch as
//! `[ts, events, dp_rank]` or a map, events as tagged lists (`["BlockStored", hashes, ...]`)
//! or maps (`{"type": "BlockStored", ...}`). Python values map as msgpack does: `None`,
//! `bool`, `int` (to 64 bits, signed or not), `float`, `str`, `bytes`, lists and tuples,
//! dicts. The engines' own classes (vLLM's and SGLang's `msgspec.Struct`s `KVEventBatch`,
//! `BlockStored`, ...) and dataclasses become maps of their fields with `type` set to the
//! struct's tag or class name: the map form the newer releases publish.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Nesting deeper than this is refused (an event batch is four levels deep).
const MAX_DEPTH: usize = 16;

/// Appends `obj` as msgpack to `out`.
pub(crate) fn encode_object(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    encode(obj, out, 0)
}

fn encode(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!("event batch nested deeper than {MAX_DEPTH} levels")));
    }
    if obj.is_none() {
        rmp::encode::write_nil(out).map_err(write_failed)?;
    } else if let Ok(b) = obj.cast::<PyBool>() {
        rmp::encode::write_bool(out, b.is_true()).map_err(write_failed)?;
    } else if obj.cast::<PyInt>().is_ok() {
        if let Ok(v) = obj.extract::<i64>() {
            rmp::encode::write_sint(out, v).map_err(write_failed)?;
        } else if let Ok(v) = obj.extract::<u64>() {
            rmp::encode::write_uint(out, v).map_err(write_failed)?;
        } else {
            return Err(PyValueError::new_err(format!("integer {obj} in an event does not fit 64 bits")));
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        rmp::encode::write_f64(out, f.value()).map_err(write_failed)?;
    } else if let Ok(s) = obj.cast::<PyString>() {
        rmp::encode::write_str(out, &s.to_cow()?).map_err(write_failed)?;
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        rmp::encode::write_bin(out, b.as_bytes()).map_err(write_failed)?;
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        rmp::encode::write_bin(out, &b.to_vec()).map_err(write_failed)?;
    } else if let Ok(list) = obj.cast::<PyList>() {
        rmp::encode::write_array_len(out, len32(list.len())?).map_err(write_failed)?;
        for item in list.iter() {
            encode(&item, out, depth + 1)?;
        }
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        rmp::encode::write_array_len(out, len32(tuple.len())?).map_err(write_failed)?;
        for item in tuple.iter() {
            encode(&item, out, depth + 1)?;
        }
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        rmp::encode::write_map_len(out, len32(dict.len())?).map_err(write_failed)?;
        for (key, value) in dict.iter() {
            encode(&key, out, depth + 1)?;
            encode(&value, out, depth + 1)?;
        }
    } else if let Some(fields) = field_names(obj)? {
        let tag = struct_tag(obj)?;
        rmp::encode::write_map_len(out, len32(fields.len() + 1)?).map_err(write_failed)?;
        rmp::encode::write_str(out, "type").map_err(write_failed)?;
        rmp::encode::write_str(out, &tag).map_err(write_failed)?;
        for name in fields {
            rmp::encode::write_str(out, &name).map_err(write_failed)?;
            encode(&obj.getattr(name.as_str())?, out, depth + 1)?;
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "an event batch holds None, bools, ints, floats, str, bytes, lists, dicts and the engines' event objects, not {}",
            obj.get_type().name()?
        )));
    }
    Ok(())
}

/// The fields of a `msgspec.Struct` (`__struct_fields__`) or a dataclass
/// (`__dataclass_fields__`); `None` for anything else.
fn field_names(obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<String>>> {
    let class = obj.get_type();
    if let Ok(fields) = class.getattr("__struct_fields__") {
        return Ok(Some(fields.extract()?));
    }
    if let Ok(fields) = class.getattr("__dataclass_fields__") {
        let fields = fields.cast_into::<PyDict>()?;
        return Ok(Some(fields.keys().iter().map(|k| k.extract::<String>()).collect::<PyResult<_>>()?));
    }
    Ok(None)
}

/// A struct's msgspec tag if it has a string one, else its class name.
fn struct_tag(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let class = obj.get_type();
    if let Ok(config) = class.getattr("__struct_config__") {
        if let Ok(tag) = config.getattr("tag") {
            if let Ok(tag) = tag.extract::<String>() {
                return Ok(tag);
            }
        }
    }
    Ok(class.name()?.to_string())
}

fn len32(len: usize) -> PyResult<u32> {
    u32::try_from(len).map_err(|_| PyValueError::new_err("a list or dict in an event batch is too long"))
}

fn write_failed(error: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("could not encode the event batch: {error}"))
}
