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
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created = client.create_automation(automation)
            if not quiet:
                print(f"automation {automation.name!r}: {created}")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:]))
