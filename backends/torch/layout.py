"""The plan's records (:mod:`pcdsl.layout`) under the name the runtime imports them by.

In a package that ``pcdsl compile -o`` emits, ``layout.py`` is a copy of :mod:`pcdsl.layout`
itself, beside copies of ``layers.py``, ``sparse.py`` and ``runtime.py``: one import line
serves both.
"""

from pcdsl.layout import ONE as ONE
from pcdsl.layout import ZERO as ZERO
from pcdsl.layout import InputLayer as InputLayer
from pcdsl.layout import LayeredPlan as LayeredPlan
from pcdsl.layout import ProductLayer as ProductLayer
from pcdsl.layout import SumLayer as SumLayer
from pcdsl.layout import contiguous_start as contiguous_start
from pcdsl.layout import plan_from_arrays as plan_from_arrays
from pcdsl.layout import same_pattern as same_pattern
