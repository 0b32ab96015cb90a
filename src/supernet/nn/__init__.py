"""Building blocks: dynamic (sliceable) ops and blocks for the supernet, static blocks for extracted networks."""
