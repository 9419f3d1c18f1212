"""Studies over many models or datasets, locally or on Ray."""
