"""Adaptive attacks: attackers who know the defense (``AttackSpec.adaptive``, ``ctx.defense``).

- :mod:`.eot` — EOT-PGD over a group's image operations (BPDA for JPEG);
- :mod:`.joint` — classifier + differentiable detector: Carlini & Wagner's combined loss and
  orthogonal / selective PGD (Bryniarski et al. 2022);
- :mod:`.hsj` — HopSkipJump on the label-only decision of the whole defended system.

Registered by :mod:`advbench_plugins.attacks.adaptive_plugins`; docs/threat-models.md explains
the threat models and success definitions.
"""
