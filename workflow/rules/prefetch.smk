# Hub models, tokenizers and datasets of the study (HUB_ITEMS, common.smk), fetched once into the
# Hugging Face cache and pinned in HUB_MANIFEST (`ckd prefetch`). A local rule: it runs on the submit
# host (a cluster's login node, which reaches the hub); the jobs then load everything offline. A
# study that reads nothing from the hub has no such job.

if HUB_ITEMS:

    localrules:
        prefetch,

    rule prefetch:
        output:
            manifest=HUB_MANIFEST,
        log:
            f"{LOGS}/prefetch.log",
        run:
            from ckd.atomic import atomic_write_json
            from ckd.prefetch import prefetch

            with open(log[0], "w") as stream:
                manifest = prefetch(
                    HUB_ITEMS,
                    study=STUDY,
                    log=lambda line: print(line, file=stream, flush=True),
                )
            atomic_write_json(output.manifest, manifest)
