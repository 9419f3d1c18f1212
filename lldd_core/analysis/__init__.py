"""Analyses: settings in, one result out, one module per analysis."""
