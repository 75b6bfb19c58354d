"""Every scenario declaration, by ``--scenario`` key; results files name theirs by ``Scenario.name``."""
from __future__ import annotations

from ..util.registry import Registry
from . import Scenario
from .continual import CONTINUAL
from .copyright import COPYRIGHT
from .fictitious import FICTITIOUS
from .memorized import MEMORIZED
from .own_data import OWN_DATA
from .real_world import REAL_WORLD


class ScenarioRegistry(Registry[Scenario]):
    """Looked up by key (``fictitious``) or by the name a results file records (``fictitious-authors``)."""

    def recorded(self, name: str) -> Scenario | None:
        """The declaration whose results files record ``name`` as their scenario, or None."""
        return next((sc for sc in self._items.values() if sc.name == name), None)

    def recorded_names(self) -> list[str]:
        return [self._items[key].name for key in self]

    def demos(self) -> list[str]:
        """The keys `lethe demo --scenario` offers: the scenarios that build their own data."""
        return [key for key in self if self._items[key].demo]

    def get(self, name: str) -> Scenario:
        return self.recorded(name) or super().get(name)


SCENARIOS = ScenarioRegistry("scenario")
for _sc in (FICTITIOUS, MEMORIZED, CONTINUAL, COPYRIGHT, REAL_WORLD, OWN_DATA):
    SCENARIOS.add(_sc.key, _sc)
