// The new-run form: blank epochs and train subset take the chosen dataset's defaults,
// shown as the fields' placeholders; only the chosen strategy's own settings are shown.
(() => {
  const hints = document.getElementById("fidelity-hints");
  const form = document.getElementById("run-form");
  if (!hints || !form) return;
  const byDataset = JSON.parse(hints.textContent);

  function showDefaults() {
    const hint = byDataset[form.elements.dataset.value];
    if (!hint) return;
    form.elements.epochs.placeholder = `default: ${hint.epochs}`;
    form.elements.train_subset.placeholder = `default: ${hint.train_subset}`;
  }

  // MemNAS grows and trims one backbone: population, sample size and the sparsity gene do not
  // apply to it; the sparsity range only matters with pruning on.
  function showStrategyOptions() {
    const memnas = form.elements.strategy.value === "memnas";
    document.getElementById("evolution-options").hidden = memnas;
    document.getElementById("memnas-options").hidden = !memnas;
    document.getElementById("memnas-start-options").hidden = !memnas;
    document.getElementById("memnas-round0").hidden = form.elements.memnas_seed_backbone.value !== "single_blocks";
    document.getElementById("pruning-options").hidden = memnas;
    document.getElementById("sparsity-range").hidden = !form.elements.pruning.checked;
    document.getElementById("asha-options").hidden = form.elements.fidelity_schedule.value !== "asha";
  }

  form.elements.dataset.addEventListener("change", showDefaults);
  form.elements.strategy.addEventListener("change", showStrategyOptions);
  form.elements.pruning.addEventListener("change", showStrategyOptions);
  form.elements.fidelity_schedule.addEventListener("change", showStrategyOptions);
  form.elements.memnas_seed_backbone.addEventListener("change", showStrategyOptions);
  showDefaults();
  showStrategyOptions();
})();
