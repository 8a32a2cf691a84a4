//! What a routing call returns to Python: [`Decision`] (aggregated, or one side of a
//! disaggregated pair) and [`PdDecision`] with the SGLang request fields as plain dicts.
//! Both are immutable views over the core's decisions; fields are read on access.

use kvroute_core::route::{CostBreakdown, Decision as CoreDecision, PdDecision as CorePdDecision};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Where a request goes and why.
#[pyclass(module = "kvroute", name = "Decision", frozen)]
pub struct Decision {
    pub(crate) inner: CoreDecision,
    /// The caller's request id (a `str`), the router's (an `int`), or `None` (dry run).
    pub(crate) request_id: Py<PyAny>,
}

#[pymethods]
impl Decision {
    #[getter]
    fn worker_id(&self) -> u64 {
        self.inner.worker.0
    }

    #[getter]
    fn dp_rank(&self) -> u32 {
        self.inner.dp_rank.0
    }

    /// Leading prompt blocks the rank holds in device memory.
    #[getter]
    fn overlap_blocks(&self) -> u32 {
        self.inner.overlap_blocks
    }

    /// The most leading prompt blocks any candidate held in device memory.
    #[getter]
    fn best_overlap_blocks(&self) -> u32 {
        self.inner.best_overlap_blocks
    }

    /// Why `overlap_blocks` is below `best_overlap_blocks` (`"load"`, `"tier"`,
    /// `"temperature"` or `"policy"`); `None` when it is not.
    #[getter]
    fn shortfall(&self) -> Option<&'static str> {
        self.inner.shortfall.map(|s| s.name())
    }

    /// The id to pass to `prefill_done` and `finish`; `None` for a dry run.
    #[getter]
    fn request_id(&self, py: Python<'_>) -> Py<PyAny> {
        self.request_id.clone_ref(py)
    }

    /// The cost terms the choice compared (see the README's cost function).
    #[getter]
    fn cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cost_dict(py, &self.inner.cost)
    }

    /// `(worker_id, dp_rank, overlap_blocks)`, as `best_worker` returns.
    fn as_tuple(&self) -> (u64, u32, u32) {
        (self.inner.worker.0, self.inner.dp_rank.0, self.inner.overlap_blocks)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Decision(worker_id={}, dp_rank={}, overlap_blocks={}, request_id={})",
            self.inner.worker.0,
            self.inner.dp_rank.0,
            self.inner.overlap_blocks,
            self.request_id.bind(py).repr().map(|r| r.to_string()).unwrap_or_default()
        )
    }
}

fn cost_dict<'py>(py: Python<'py>, cost: &CostBreakdown) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("request_blocks", cost.request_blocks)?;
    dict.set_item("overlap_credit", cost.overlap_credit)?;
    dict.set_item("prefill_blocks", cost.prefill_blocks)?;
    dict.set_item("decode_blocks", cost.decode_blocks)?;
    dict.set_item("active_requests", cost.active_requests)?;
    dict.set_item("total", cost.total)?;
    Ok(dict)
}

/// A prefill rank, a decode rank and the bootstrap room that ties them
/// (`bootstrap_room % prefill_dp_size == prefill.dp_rank`).
#[pyclass(module = "kvroute", name = "PdDecision", frozen)]
pub struct PdDecision {
    pub(crate) inner: CorePdDecision,
    pub(crate) request_id: Py<PyAny>,
}

#[pymethods]
impl PdDecision {
    #[getter]
    fn prefill(&self, py: Python<'_>) -> Decision {
        Decision { inner: self.inner.prefill.clone(), request_id: self.request_id.clone_ref(py) }
    }

    #[getter]
    fn decode(&self, py: Python<'_>) -> Decision {
        Decision { inner: self.inner.decode.clone(), request_id: self.request_id.clone_ref(py) }
    }

    #[getter]
    fn bootstrap_room(&self) -> u64 {
        self.inner.bootstrap.room.0
    }

    #[getter]
    fn bootstrap_host(&self) -> String {
        self.inner.bootstrap.host.clone()
    }

    #[getter]
    fn bootstrap_port(&self) -> Option<u16> {
        self.inner.bootstrap.port
    }

    /// The prefill server's DP size, the modulus of the room rule.
    #[getter]
    fn prefill_dp_size(&self) -> u32 {
        self.inner.bootstrap.prefill_dp_size
    }

    /// One id for both sides, for `prefill_done` and `finish`; `None` for a dry run.
    #[getter]
    fn request_id(&self, py: Python<'_>) -> Py<PyAny> {
        self.request_id.clone_ref(py)
    }

    /// Fields to merge into the request sent to the prefill server (SGLang's names).
    fn prefill_fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let fields = self.inner.prefill_fields();
        let dict = PyDict::new(py);
        dict.set_item("routed_dp_rank", fields.routed_dp_rank)?;
        dict.set_item("bootstrap_host", fields.bootstrap_host)?;
        dict.set_item("bootstrap_port", fields.bootstrap_port)?;
        dict.set_item("bootstrap_room", fields.bootstrap_room)?;
        Ok(dict)
    }

    /// Fields to merge into the request sent to the decode server (SGLang's names; the
    /// prefill rank as `disagg_prefill_dp_rank`, and the decode rank under its old name
    /// `data_parallel_rank` too).
    fn decode_fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let fields = self.inner.decode_fields();
        let dict = PyDict::new(py);
        dict.set_item("routed_dp_rank", fields.routed_dp_rank)?;
        dict.set_item("disagg_prefill_dp_rank", fields.disagg_prefill_dp_rank)?;
        dict.set_item("data_parallel_rank", fields.data_parallel_rank)?;
        dict.set_item("bootstrap_host", fields.bootstrap_host)?;
        dict.set_item("bootstrap_port", fields.bootstrap_port)?;
        dict.set_item("bootstrap_room", fields.bootstrap_room)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "PdDecision(prefill=({}, {}), decode=({}, {}), bootstrap_room={})",
            self.inner.prefill.worker.0,
            self.inner.prefill.dp_rank.0,
            self.inner.decode.worker.0,
            self.inner.decode.dp_rank.0,
            self.inner.bootstrap.room.0
        )
    }
}
