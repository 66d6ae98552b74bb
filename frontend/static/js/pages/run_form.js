// The new-run form: blank epochs and train subset take the chosen dataset's defaults,
// shown as the fields' placeholders.
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

  form.elements.dataset.addEventListener("change", showDefaults);
  showDefaults();
})();
