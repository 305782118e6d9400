"""train stage (in progress)."""

from eft.pipeline import StageContext, StageFailed


def run(ctx: StageContext):
    raise StageFailed("train", "not implemented yet")
