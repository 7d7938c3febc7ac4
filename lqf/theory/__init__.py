"""Theory of fine-tuning with linear teachers (Shachaf, Brutzkus & Globerson, NeurIPS 2021).

* :mod:`lqf.theory.linear` — GD from ``theta_S`` on least squares: closed form, simulator,
  ridge towards ``theta_S``, exact risk for given features (NumPy or PyTorch ``X``).
* :mod:`lqf.theory.expectations` — expectations over Gaussian samples: Monte Carlo with
  95% intervals, exact isotropic formulas, the similarity measure ``S_n``.
* :mod:`lqf.theory.deep_linear` — deep linear networks from a balanced factorisation of
  ``theta_S``: GD on the factors, the closed-form limit of gradient flow, frozen layers.
* :mod:`lqf.theory.ntk` — two-layer ReLU networks: empirical NTK, kernel regression, GD.
* :mod:`lqf.theory.transfer` — scores from a few-shot training split of a pretrained network:
  the cross-fitted risk of the linearized head + last block against the linear probe
  (``lqf theory transfer``), beside LogME and LEEP (:mod:`lqf.theory.scores`).
* :mod:`lqf.theory.figures` — the figures of ``lqf theory figure NAME``.

See docs/theory.md for the formulas, their derivations and what the figures show.
"""
