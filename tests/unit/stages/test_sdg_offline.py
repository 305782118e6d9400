"""Offline pseudo-queries and near-duplicate removal."""

import numpy as np
from eft.stages.sdg.dedup import dedup_questions
from eft.stages.sdg.offline import generate


def chunks():
    out = []
    for d, topic in enumerate(["glacier", "copper"]):
        for pos in range(3):
            out.append({"_id": f"{topic}-{pos}", "title": f"{topic.title()} guide",
                        "text": f"The {topic} sensor {pos} reports drift every {pos + 3} hours. "
                                f"Operators recalibrate the {topic} sensor {pos} with a reference probe. "
                                f"Spare {topic} parts for unit {pos} ship from the northern depot.",
                        "metadata": {"source": f"{topic}.md", "position": pos}})
    return out


def test_offline_questions_point_at_their_chunks_and_are_deterministic():
    qs, stats = generate(chunks(), questions_per_chunk=3, max_hops=2, seed=1)
    again, _ = generate(chunks(), questions_per_chunk=3, max_hops=2, seed=1)
    assert qs == again
    ids = {c["_id"]: c for c in chunks()}
    for q in qs:
        assert q["backend"] == "offline" and q["positives"] and all(p in ids for p in q["positives"])
        assert q["hops"] == len(q["positives"])
        if q["kind"] == "ict":
            assert q["text"] in ids[q["positives"][0]]["text"]
    single = [q for q in qs if q["hops"] == 1]
    assert len(single) >= 2 * len(ids)
    assert set(stats["kinds"]) >= {"ict", "keywords"}


def test_bridge_questions_only_join_neighbours_of_one_document():
    qs, _ = generate(chunks(), questions_per_chunk=1, max_hops=2, seed=3)
    for q in (q for q in qs if q["kind"] == "bridge"):
        a, b = q["positives"]
        assert a.split("-")[0] == b.split("-")[0]
        assert abs(int(a.split("-")[1]) - int(b.split("-")[1])) == 1
    one_hop, _ = generate(chunks(), questions_per_chunk=1, max_hops=1, seed=3)
    assert all(q["hops"] == 1 for q in one_hop)


def test_dedup_drops_near_duplicates_in_order():
    v = np.array([[1, 0, 0], [0.999, 0.0447, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    qs = [{"_id": str(i)} for i in range(4)]
    kept, dropped = dedup_questions(qs, v, threshold=0.9)
    assert [q["_id"] for q in kept] == ["0", "2", "3"] and dropped == 1
    kept, dropped = dedup_questions(qs, v, threshold=0.5)
    assert [q["_id"] for q in kept] == ["0", "2"] and dropped == 2
