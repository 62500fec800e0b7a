"""ut-video-assets: UserTesting session videos into your own object storage, verified and catalogued.

The pipeline layer (`ut_video_assets.definitions`) sits on three plain libraries with no Dagster import:
`ut_video_assets.usertesting` (the Results API client), `ut_video_assets.transfer` (the streaming download)
and `ut_video_assets.storage` (the object store). `ut_video_assets.sandbox` holds the local stand-ins and is
never imported by the pipeline.
"""

__version__ = "0.1.0"
