"""Concept datasets for the LLV gain-curve analysis: texts with binary labels, splits and class directions.

A *concept dataset* (:class:`.data.ConceptData`) is a list of texts with binary labels; label 1 is
the first-named class. Three kinds, by where the rows come from:

* **built-in** (``sentiment``, ``politeness``, ``topic``, ``truth``): stored with the package,
  always available offline (:func:`.catalog.load_builtin`);
* **hub**: the ten binary tasks of the LLV paper, loaded into the local Hugging Face datasets cache
  (:mod:`.hub`; each task's fields and label rule in :data:`.registry.REGISTRY`);
* **user files**: CSV / TSV / JSONL with columns ``text`` and ``label`` (:mod:`.files`).

Modules, each depending only on those above it: ``data`` (the dataclass, size rules),
``files`` (user files), ``registry`` (datasets by name), ``hub`` (loading paper tasks),
``catalog`` (``load`` by name, the listing), ``splits`` (balanced concept / operating / evaluation
splits), ``directions`` (the per-layer class-mean directions ``v_l``).
"""
