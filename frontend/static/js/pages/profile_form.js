// The profile form's preset picker: choosing a board fills the fields with its figures,
// which the user then trims to the share of the chip the model may use.
(() => {
  const picker = document.getElementById("preset-picker");
  const data = document.getElementById("preset-data");
  if (!picker || !data) return;
  const presets = new Map(JSON.parse(data.textContent).map((p) => [String(p.id), p]));

  picker.addEventListener("change", () => {
    const preset = presets.get(picker.value);
    if (!preset) return;
    const form = picker.closest("form");
    for (const field of ["sram_kb", "flash_kb", "core", "clock_mhz", "notes"]) {
      if (form.elements[field]) form.elements[field].value = preset[field];
    }
    if (form.elements.name && !form.elements.name.value) {
      form.elements.name.value = `My ${preset.name}`;
    }
  });
})();
