"""The Steering lab: a sweep of steering methods × layers × strengths, what each setting achieves (success)
and costs (fluency, repetition, side effects), Pareto fronts, recommended settings and the LLV prediction of
the best layer (:mod:`.settings`, :mod:`.knobs`, :mod:`.metrics`, :mod:`.probe`, :mod:`.judge`, :mod:`.sweep`,
:mod:`.answers`)."""
