"""Work pools, job templates, automations and the setup that puts them on a Prefect server."""
