"""picamd: a camera daemon for the Raspberry Pi."""

__version__ = "0.1.0"
