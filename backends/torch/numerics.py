""":mod:`pcdsl.numerics` under the name the runtime imports it by (an emitted package holds a
copy of that module itself; see ``layout.py``)."""

from pcdsl.numerics import underflow_guard as underflow_guard
