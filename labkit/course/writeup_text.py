"""Every sentence of the student's write-up, once, in both languages: ``text(key, lang, **values)``.

`labkit.course.report` builds the write-up's pages from these; a test checks both languages fill
in the same values.
"""


# Every sentence of the write-up, once, in both languages: {key: (Chinese, English)}.
TEXT = {
    "title": ("InternVL2 多模态微调实验报告", "InternVL2 multimodal fine-tuning: lab write-up"),
    "intro": ("本报告由 labkit 从运行文件夹 run folder 里的结果自动生成：每个数字、每张图都来自笔记本真正算出的结果。",
              "labkit built this write-up from the results in the run folder: every number and figure is what the "
              "notebooks really computed."),
    "run_line": ("基座模型 base model：`{model}`；全部笔记本用时 {wall:.0f} 秒。",
                 "Base model: `{model}`; all notebooks took {wall:.0f} s."),
    "missing": ("**缺少 missing**：{what}（{hint}）。", "**Missing**: {what} ({hint})."),
    "run_notebook": ("运行 notebook {nb} 会写出它", "running notebook {nb} writes it"),
    "missing_key": ("`{file}` 里没有 `{field}`", "`{file}` has no `{field}`"),
    "bad_png": ("`{file}` 不是 PNG 图片", "`{file}` is not a PNG picture"),
    "missing_summary": ("本报告缺少的部分 what this write-up lacks", "What this write-up lacks"),
    "nothing_missing": ("没有缺少的部分。", "Nothing is missing."),
    # 1. architecture
    "arch": ("1. 多模态设计模式与 InternVL2 架构", "1. The multimodal design pattern and InternVL2's architecture"),
    "arch_pattern": ("InternVL2 采用 ViT-MLP-LLM 设计模式：视觉编码器 InternViT 把图片的每个图块 tile 变成 patch token，"
                     "像素重排 pixel shuffle 把 token 数变为 1/4，投影层 `mlp1` 把它们映射到语言模型的宽度，"
                     "语言模型 InternLM2 在提示词的 `<IMG_CONTEXT>` 位置读到它们。",
                     "InternVL2 follows the ViT-MLP-LLM pattern: the InternViT vision encoder turns each tile of the "
                     "picture into patch tokens, pixel shuffle keeps a quarter of them, the `mlp1` projector maps them "
                     "to the language model's width, and InternLM2 reads them at the prompt's `<IMG_CONTEXT>` places."),
    "arch_picture": ("追踪的图片：{dish}，{w}×{h} 像素，切成 {tiles} 个图块（含缩略图）。",
                     "The traced picture: {dish}, {w}x{h} pixels, cut into {tiles} tiles (thumbnail included)."),
    "arch_shapes": ("一张图走过模型的每一步（形状由模型代码算出）", "One picture through the model, step by step (shapes computed by the model's code)"),
    "step": ("步骤", "step"), "shape": ("形状", "shape"), "note": ("说明", "note"),
    "arch_params": ("参数都在哪里：tiny 课程模型 {tiny:,} 个参数，InternVL2-2B {full:,} 个。",
                    "Where the parameters are: the tiny course model has {tiny:,}, InternVL2-2B {full:,}."),
    "part": ("部分", "part"), "params": ("参数量", "parameters"), "share": ("占比", "share"),
    "tokens_table": ("一张照片在 InternVL2-2B 里占多少图像 token", "How many image tokens a photo takes in InternVL2-2B"),
    "max_tiles": ("图块上限", "max tiles"), "grid": ("网格", "grid"), "tiles": ("图块", "tiles"),
    "image_tokens": ("图像 token", "image tokens"),
    "fig_tiles": ("动态切图", "dynamic tiling"), "fig_flow": ("数据流图", "data flow"),
    # 2. baseline
    "base": ("2. 与基座模型对话", "2. Chatting with the base model"),
    "base_engine": ("推理引擎 engine：{engine}。", "Engine: {engine}."),
    "base_prompt": ("模型真正读到的提示词 prompt（`<IMG_CONTEXT>` 已缩写）：", "The exact prompt the model reads (`<IMG_CONTEXT>` abbreviated):"),
    "dish": ("菜", "dish"), "held_back": ("未训练过 held back", "held back"), "question": ("问题", "question"),
    "answer": ("回答", "answer"), "named": ("识别为", "named"), "yes": ("是", "yes"),
    "base_cheung_fun": ("肠粉的图片，基座模型回答「{answer}」，把它叫成了 **{named}**：它从没学过肠粉。",
                        "Shown 肠粉 (cheung fun), the base model answered \"{answer}\", calling it **{named}**: it was never taught 肠粉."),
    "base_cheung_fun_right": ("肠粉的图片，基座模型回答「{answer}」。", "Shown 肠粉, the base model answered \"{answer}\"."),
    "base_form": ("回答符合「图中的菜是X。」句式的比例：{rate:.0%}。", "Answers in the form \"图中的菜是X。\": {rate:.0%}."),
    # 3. fine-tune
    "tune": ("3. XTuner 微调", "3. Fine-tuning with XTuner"),
    "tune_settings": ("训练设置（XTuner 配置的 PART 1 Settings，预设 `{preset}`）：", "The training settings (PART 1 of the XTuner config, preset `{preset}`):"),
    "tune_overrides": ("改动的设置 overrides：`{overrides}`。", "Settings changed: `{overrides}`."),
    "tune_plan": ("显存规划 memory plan（训练前的预测）：", "The memory plan (predicted before training):"),
    "tune_run": ("XTuner 训练了 {iterations} 次迭代 iterations（计划 {planned} 次，{samples} 个样本），用时 {wall:.0f} 秒；"
                 "损失 loss 从 {first:.3f} 降到 {last:.3f}。",
                 "XTuner ran {iterations} iterations (planned {planned}, {samples} samples) in {wall:.0f} s; "
                 "the loss went from {first:.3f} to {last:.3f}."),
    "tune_system": ("训练用的系统提示词 system prompt：{prompt}", "System prompt used in training: {prompt}"),
    "fig_loss": ("损失曲线", "loss curve"),
    # 4. conversion
    "conv": ("4. 权重转换", "4. Converting the weights"),
    "conv_summary": ("XTuner 的 `.pth` 只存了 LoRA 适配器和 `mlp1`；转换把适配器合并 merge 进每个 Linear 层，写出普通的 "
                     "InternVL2 文件夹：{mb:.1f} MB 的 safetensors 权重，{shards} 个文件。",
                     "XTuner's `.pth` holds only the LoRA adapters and `mlp1`; conversion merges each adapter into its "
                     "Linear layer and writes an ordinary InternVL2 folder: {mb:.1f} MB of safetensors weights in {shards} file(s)."),
    "conv_check": ("合并检查 merge check：合并后的模型与 LoRA 模型的 logits 最大相差 {diff:.2e}；"
                   "全新进程加载文件夹后回答「{answer}」。",
                   "Merge check: merged vs LoRA model logits differ by at most {diff:.2e}; the folder loaded in a "
                   "fresh process answered \"{answer}\"."),
    "conv_hand": ("手动合并的 `{layer}` 与文件夹里的权重相差 {steps:.2f} 个 bf16 舍入步长。",
                  "The hand-merged `{layer}` matches the folder's weight within {steps:.2f} bf16 rounding steps."),
    "file": ("文件", "file"), "size": ("大小", "size"),
    # 5. comparison
    "comp": ("5. 微调前后对比", "5. Before and after the fine-tune"),
    "comp_summary": ("未训练过的菜 held-back dishes：基座 {hb:.0%} → 微调后 {ht:.0%}；已学过的菜 known dishes：基座 {kb:.0%} → 微调后 {kt:.0%}。",
                     "Held-back dishes: base {hb:.0%} -> tuned {ht:.0%}; known dishes: base {kb:.0%} -> tuned {kt:.0%}."),
    "base_acc": ("基座", "base"), "tuned_acc": ("微调后", "tuned"),
    "comp_example": ("肠粉的例子：问「{question}」，基座模型答「{base}」，微调后的模型答「{tuned}」。",
                     "The 肠粉 example: asked \"{question}\", the base model said \"{base}\", the tuned model \"{tuned}\"."),
    "fig_accuracy": ("每道菜的准确率", "accuracy per dish"), "fig_confusion": ("混淆矩阵", "confusion matrices"),
    "fig_gallery": ("测试图片与两个模型的回答", "test pictures and both models' answers"),
    # exercises
    "exercises": ("练习", "Exercises"),
    "ex_passed": ("✓ 通过", "✓ passed"), "ex_failed": ("✗ 未通过（{status}）", "✗ not passed ({status})"),
    "ex_unchecked": ("— 还没检查", "— not checked yet"),
    "ex_no_code": ("（答案代码不在 {file} 里）", "(the answer's code is not in {file})"),
    # reflection and appendix
    "reflection": ("6. 心得", "6. Reflection"),
    "reflection_missing": ("还没写心得：在 notebook 05 里标记为 `reflection` 的 Markdown 格（或运行文件夹里的 `notes.md`）写下你的体会。",
                           "No reflection written yet: write it in the Markdown cell tagged `reflection` of notebook 05 "
                           "(or in `notes.md` in the run folder)."),
    "appendix": ("附录：运行记录", "Appendix: the run"),
    "notebook": ("笔记本", "notebook"), "seconds": ("秒", "seconds"),
}


def text(key, lang="zh", **values):
    """One sentence of ``TEXT`` in ``lang`` ("zh" or "en"), with ``values`` filled in."""
    zh, en = TEXT[key]
    return (zh if lang == "zh" else en).format(**values)
