"""A deployable Modal app for the ``modal-fn:`` executor: the quickstart's scoring on Modal.

arcflow calls the deployed function once per scenario with the scenario as a JSON-safe
dict (``{"id": ..., "input": {...}, "tags": [...], "metadata": {...}}``) and reads its
return value as it reads a ``python:`` function's: ``None``, or a mapping of ``status``
(``"passed"`` / ``"failed"``), ``score``, ``output`` (and ``usage``).  An exception it
raises is an ``error`` outcome with the exception's type and the end of its traceback.

Deploy it, then run the bundled scenarios through it::

    modal deploy examples/modal_app.py
    python -m arcflow run examples/quickstart.jsonl --executor modal-fn:arcflow-example/score

Containers: at most ``MAX_CONTAINERS`` of them, each taking ``MAX_INPUTS`` scenarios at
once (``@modal.concurrent``), so up to 500 scenarios run at the same time; give arcflow
at least that much ``--concurrency`` to use them all.  Importing this file needs
``modal`` only for the app itself: :func:`score_scenario` is plain Python.
"""

from __future__ import annotations

from typing import Any

#: The names the executor spec uses: modal-fn:APP_NAME/score.
APP_NAME = "arcflow-example"
MAX_CONTAINERS = 50
MAX_INPUTS = 10


def score_scenario(scenario: dict[str, Any]) -> dict[str, Any]:
    """Whether the scenario's word is a palindrome once lower-cased; the score is the
    fraction of letters that mirror (the quickstart's ``score``, on the scenario dict)."""
    text = str(scenario.get("input", {}).get("text", "")).lower()
    if not text:
        raise ValueError(f"scenario {scenario.get('id')!r} has no text")
    pairs = len(text) // 2 or 1
    mirrored = sum(1 for i in range(len(text) // 2) if text[i] == text[-1 - i])
    return {
        "status": "passed" if text == text[::-1] else "failed",
        "score": round(mirrored / pairs, 4),
        "output": {"reversed": text[::-1], "length": len(text)},
    }


try:
    import modal
except ImportError:  # the app is only needed to deploy it
    modal = None  # type: ignore[assignment]

if modal is not None:
    app = modal.App(APP_NAME)

    @app.function(image=modal.Image.debian_slim(), max_containers=MAX_CONTAINERS, timeout=300)
    @modal.concurrent(max_inputs=MAX_INPUTS)
    def score(scenario: dict[str, Any]) -> dict[str, Any]:
        """The deployed function: one scenario in, its result mapping out."""
        return score_scenario(scenario)
