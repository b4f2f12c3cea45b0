"""Hostile deliveries and pushed files: the webhook answers 2xx with a FAILED build status naming
the problem for every hostile tweak file (and starts nothing), refuses a deep JSON body with a
400, and recognises a replay by its signed body, whatever its request id.
"""

from __future__ import annotations

import uuid

from tests.validation.hostile import repository_cases
from tests.webhook.bitbucket_fake import FakeBitbucket
from tests.webhook.test_webhook import REPO, branch_change, commit, deliver, push_payload, repo_with_push, submitted_for
from tweakline.webhook.app import Webhook


async def test_every_hostile_tweak_file_gets_a_failed_status_naming_the_problem(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    cases = repository_cases()
    wrong: dict[str, object] = {}
    commits: set[str] = set()
    for batch in range(0, len(cases), 8):  # pushes of 8 files: each answered within Bitbucket's 10 s on a quiet machine
        pushed = cases[batch : batch + 8]
        new, old = commit(), commit()
        commits.add(new)
        for case in pushed:
            assert case.data is not None
            bitbucket.files[(REPO, new, f"hostile/{case.name}.tweak.yaml")] = case.data
            if case.csv is not None:
                bitbucket.files[(REPO, new, f"hostile/data/{case.name}.csv")] = case.csv
        bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("added", f"hostile/{c.name}.tweak.yaml") for c in pushed]

        response = await deliver(webhook, "repo:push", push_payload(branch_change("main", new, old)), timeout=120)

        assert response.status_code == 200, response.text[:2000]  # handled: not retried by Bitbucket
        assert len(response.content) < 50_000  # problems are clipped, never echoing a bomb back
        body = response.json()
        assert body["submitted"] == []
        refused = {i["path"].removeprefix("hostile/").removesuffix(".tweak.yaml") for i in body["invalid"]}
        assert refused == {c.name for c in pushed}
        statuses = {c.json["name"]: c.json for c in bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST")}
        for case in pushed:
            status = statuses.get(f"tweakline hostile/{case.name}.tweak.yaml")
            if status is None or status["state"] != "FAILED" or case.expect not in status["description"]:
                wrong[case.name] = status and status["description"]
    assert not wrong, wrong
    assert await submitted_for(nats, commits) == []  # nothing started


async def test_a_deep_or_odd_json_body_is_a_400(webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    deep = await deliver(webhook, "repo:push", b"[" * 100_000 + b"]" * 100_000)
    huge_number = await deliver(webhook, "repo:push", b'{"push": ' + b"9" * 5000 + b"}")
    constant = await deliver(webhook, "repo:push", b'{"push": NaN}')
    for response in (deep, huge_number, constant):
        assert response.status_code == 400, response.text
        assert "body is not a JSON object" in response.json()["error"]
    assert "nested" in deep.json()["error"] and "digits" in huge_number.json()["error"]
    assert bitbucket.calls == []


async def test_a_replay_with_a_new_request_id_is_recognised_by_its_signed_body(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    new, old = commit(), commit()
    repo_with_push(bitbucket, new, old)
    payload = push_payload(branch_change("main", new, old))
    first = await deliver(webhook, "repo:push", payload, request_id="{" + str(uuid.uuid4()) + "}")
    calls = len(bitbucket.calls)
    replay = await deliver(webhook, "repo:push", payload, request_id="{" + str(uuid.uuid4()) + "}")
    assert first.status_code == 202
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate", replay.text
    assert "signed body" in replay.json()["reason"]
    assert len(bitbucket.calls) == calls  # nothing fetched or reported again
    assert len(await submitted_for(nats, {new})) == 2  # the two files of the first delivery, once
