"""Trainers that need the attacks: universal adversarial training (:mod:`robaudit.training.harden`).

A layer of its own between ``eval`` and ``attacks``: hardening runs the UAP engine inside the shared fit
loop (:mod:`robaudit.models.fit`), so it can live neither in ``models`` (below the attacks) nor in ``eval``
(which evaluates, it does not train).
"""
