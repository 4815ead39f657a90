"""The paper kit: what reproduces Dablain et al. (2022) around the toolkit's core — data sets and their
imbalance (:mod:`.datasets`), the peers' losses and schedules (:mod:`.losses`), the CIFAR ResNets and checkpoint
loading (:mod:`.models`), the demo (:mod:`.demo`) and the training recipes (:mod:`.reproduce`).

The core — capture (:mod:`fragility.recorder`, :mod:`fragility.taps`), the store (:mod:`fragility.store`), the
analysis (:mod:`fragility.analysis`), plugins, the report and the CLI — never imports this package; the CLI's
``demo`` and ``reproduce`` commands load it when they run.
"""
