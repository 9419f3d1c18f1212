"""Forward passes: detached mode, hooks, Jacobian operators, layer views, depth dynamics, interventions."""
