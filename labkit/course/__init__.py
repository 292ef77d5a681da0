"""The course around the notebooks: the architecture walkthrough, the workspace, the main
job, its report and the build of the tiny base model.
"""
