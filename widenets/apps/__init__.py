"""Applications built on the library: the ``widenets`` command (`cli`), the
demo (`demo`, ``python -m widenets.apps.demo``) and the digits evaluation
(`evaluate`). The library (``widenets`` outside this package) never imports
from here."""
