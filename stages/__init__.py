"""Pipeline stages; each module exposes run(ctx) -> StageResult (see eft.pipeline)."""
