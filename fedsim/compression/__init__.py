"""Concrete compression codecs (``compression=``), each a subclass of :class:`fedsim.codec.Codec`."""
