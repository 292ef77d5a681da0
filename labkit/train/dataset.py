"""XTuner's InternVL data set, trained with the model folder's own system prompt.

XTuner's ``InternVL_V1_5_Dataset`` lays every sample out as InternVL2's ``internlm2-chat``
template does, but with XTuner's own system prompt ("You are an AI assistant whose name is
InternLM (书生·浦语)."), whatever the model folder says. A tuned model answers best in the
layout it was trained with, so labkit trains with the system prompt of the template the
folder's ``config.json`` names, from the folder's own ``conversation.py``:

* labkit's folders name ``internlm2-chat-xtuner``, whose system prompt IS XTuner's: nothing
  changes for them.
* OpenGVLab's InternVL2-2B names ``internlm2-chat`` (InternVL's Chinese system prompt), which
  its own ``chat()`` and LMDeploy's InternVL2 template use: training with that prompt makes the
  converted model answer in the template it already names, in every engine.

Rendered XTuner configs use :class:`FolderPromptDataset` with ``system="auto"``.

It also mixes in **replay** samples (``Settings.replay``): that many known-dish samples drawn from
``replay_data`` (the base model's own training set), balanced over the dishes and seeded by the
run's seed (`labkit.data.build.replay_indices`), added to the samples of ``data_paths``.
"""
from xtuner.dataset import InternVL_V1_5_Dataset

from labkit.checkpoints.remote_code import folder_template


class FolderPromptDataset(InternVL_V1_5_Dataset):
    """``InternVL_V1_5_Dataset`` whose samples carry ``system`` as their system prompt.

    ``system="auto"``: the model folder's own (``labkit.checkpoints.remote_code.folder_template``); ``None``: XTuner's.
    """

    def __init__(self, model_path, *args, system="auto", replay=0, replay_data=None, replay_seed=0, **kwargs):
        if replay:
            from labkit.data.build import replay_source

            replay_data = str(replay_source(replay_data, kwargs["data_paths"][0]))
            kwargs = self._with_replay_file(replay_data, kwargs)
        super().__init__(model_path, *args, **kwargs)
        if replay:
            self._keep_replay(replay_data, replay, replay_seed)
        if system == "auto":
            system = folder_template(model_path)[1]
        if system is not None:
            self._system = system  # read by XTuner's get_inputid_labels for the first turn

    @staticmethod
    def _with_replay_file(replay_data, kwargs):
        """XTuner reads ``replay_data`` as one more annotation file (its records come last)."""
        kwargs = dict(kwargs)
        paths = list(kwargs["data_paths"])
        folders = list(kwargs.get("image_folders") or [None] * len(paths))
        repeats = kwargs.get("repeat_times", 1)
        repeats = list(repeats) if isinstance(repeats, (list, tuple)) else [repeats] * len(paths)
        kwargs.update(data_paths=paths + [replay_data], image_folders=folders + [folders[0]],
                      repeat_times=repeats + [1])
        return kwargs

    def _keep_replay(self, replay_data, count, seed):
        """Keep only the replay records `replay_indices` draws, after every record of data_paths."""
        from labkit.data.build import replay_indices
        from labkit.data.validate import read_annotations

        records = read_annotations(replay_data)
        start = len(self.data) - len(records)
        keep = list(range(start)) + [start + k for k in replay_indices(records, count, seed)]
        self.data = [self.data[k] for k in keep]
        self.image_folder = [self.image_folder[k] for k in keep]
        self.group_length = [self.group_length[k] for k in keep]
