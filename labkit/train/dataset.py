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
"""
from xtuner.dataset import InternVL_V1_5_Dataset

from labkit.checkpoints.remote_code import folder_template


class FolderPromptDataset(InternVL_V1_5_Dataset):
    """``InternVL_V1_5_Dataset`` whose samples carry ``system`` as their system prompt.

    ``system="auto"``: the model folder's own (``labkit.checkpoints.remote_code.folder_template``); ``None``: XTuner's.
    """

    def __init__(self, model_path, *args, system="auto", **kwargs):
        super().__init__(model_path, *args, **kwargs)
        if system == "auto":
            system = folder_template(model_path)[1]
        if system is not None:
            self._system = system  # read by XTuner's get_inputid_labels for the first turn
