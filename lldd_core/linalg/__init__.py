"""Model-free numerics: spectra, the LLV surrogate, LQR, decoding vectors to tokens."""
