"""``sddkit ui``: ``mlflow server`` on the project's store at 127.0.0.1, one worker, run by ``sddkit.serving``
(Ctrl-C, SIGTERM, SIGHUP, an error or a kill -9 of this command ends it: no server outlives it)."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from rich.console import Console

from sddkit import serving
from sddkit.serving import checked_port

ServeError = serving.ServeError  # what the command catches
HOST = serving.LOOPBACK
console = Console(stderr=True)


def serve(uri: str, root: Path, port: int | None = None, ready_timeout: float = 180.0, experiment: str = "sddkit",
          open_browser: bool = False) -> int:
    """Run the server until Ctrl-C (0) or its own exit (its code); print (and open) ``trajectories_link``."""
    port = checked_port(port)
    command = serving.mlflow_server(uri, root, HOST, port, "sddkit ui")

    def show(url: str) -> None:
        link = trajectories_link(url, experiment)
        console.print(f"MLflow UI of {uri} at [bold]{url}[/] (Ctrl-C stops it); the trajectories of experiment "
                      f"{experiment!r}:", highlight=False, soft_wrap=True)
        print(link, flush=True)
        if open_browser:
            webbrowser.open(link)

    return serving.run(command, root, f"http://{HOST}:{port}", show, ready_timeout=ready_timeout)


# What MLflow 3.17's UI reads from the link (its experiment page routes): ``workflowType=machine_learning``
# shows the training runs rather than the GenAI overview, ``searchFilter`` fills the runs table's search box.
TRAJECTORY_FILTER = "tags.`sddkit.kind` = 'trajectory'"
# The experiment's kind (tracking.EXPERIMENT_KIND), for UIs that choose the view by it. 3.17.2's, which has the
# GenAI | Model training switch, chooses by the link's workflowType, else the browser's last choice of the switch.
ML_KIND = ("mlflow.experimentKind", "custom_model_development")


def trajectories_link(url: str, experiment: str) -> str:
    """The UI's runs table of ``experiment`` in the machine-learning view, filtered to trajectories (round runs
    stay nested under theirs); ``url`` while the server does not know the experiment."""
    found = api(url, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment}))
    if found is None:
        return url
    exp = found["experiment"]
    if not any(t.get("key") == ML_KIND[0] for t in exp.get("tags", [])):  # created by older sddkit
        api(url, "experiments/set-experiment-tag",
            {"experiment_id": exp["experiment_id"], "key": ML_KIND[0], "value": ML_KIND[1]})
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": TRAJECTORY_FILTER},
                                   quote_via=urllib.parse.quote)
    return f"{url}/#/experiments/{exp['experiment_id']}/runs?{query}"


def api(url: str, path: str, body: dict | None = None) -> dict | None:
    """One call of the server's REST API (POST when ``body`` is given); None on an error."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None
