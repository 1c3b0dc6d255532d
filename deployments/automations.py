"""Create the automations in deployments/automations.yaml on the Prefect server, replacing any
of the same name, so running setup again never duplicates them. Needs PREFECT_API_URL."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

AUTOMATIONS = Path(__file__).with_name("automations.yaml")


def main(path: Path = AUTOMATIONS, quiet: bool = False) -> None:
    """Replace each automation in `path` on the server (by name)."""
    wanted = [AutomationCore.model_validate(item) for item in yaml.safe_load(path.read_text())["automations"]]
    with get_client(sync_client=True) as client:
        for automation in wanted:
            existing = client.read_automations_by_name(automation.name)
            # Keep an unchanged automation: replacing it would drop what its proactive trigger is
            # waiting for (a run killed just before the manager restarts would never be marked
            # CRASHED, and its episodes would stay leased for JOB_TIMEOUT_HOURS; chaos soak).
            if len(existing) == 1 and _definition(existing[0]) == _definition(automation):
                if not quiet:
                    print(f"automation {automation.name!r}: unchanged, kept")
                continue
            for old in existing:
                client.delete_automation(old.id)
            created = client.create_automation(automation)
            if not quiet:
                print(f"automation {automation.name!r}: {created}")


def _definition(automation: AutomationCore) -> object:
    """What an automation does, without the ids and timestamps the server gives it."""
    fields = AutomationCore.model_fields.keys()
    return _without_ids(automation.model_dump(mode="json", include=set(fields)))


def _without_ids(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_ids(item) for key, item in value.items() if key not in ("id", "created", "updated")}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    return value


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:]))
