// The Rounds page's start form: says before submitting whether the chosen stage can start now
// (the sentences come with the page), shows the folds only for Stage I, picks the stage's own
// set of networks, and opens the advanced list when "Choose networks" is picked.
const form = document.getElementById("round-start");
const stage = form.querySelector("select[name=stage]");
const blocked = document.getElementById("stage-blocked");
const submit = document.getElementById("start-round");
const folds = document.getElementById("folds-field");
const advanced = document.getElementById("advanced-networks");
const setForStage = JSON.parse(document.getElementById("stage-network-sets").textContent);
const options = new Map(
  [...document.querySelectorAll("[data-testid=start-options] li")].map((li) => [
    li.dataset.stage,
    { possible: li.dataset.possible === "1", reason: li.dataset.blocked },
  ]),
);

function showStage(pickSet) {
  const option = options.get(stage.value);
  const possible = !option || option.possible;
  blocked.hidden = possible;
  blocked.textContent = possible ? "" : option.reason;
  submit.disabled = !possible;
  folds.hidden = stage.value !== folds.dataset.onlyStage;
  if (pickSet && setForStage[stage.value]) {
    const radio = form.querySelector(`input[name=network_set][value="${setForStage[stage.value]}"]`);
    if (radio) radio.checked = true;
  }
}

stage.addEventListener("change", () => showStage(true));
form.querySelectorAll("input[name=network_set]").forEach((radio) =>
  radio.addEventListener("change", () => {
    if (radio.checked && radio.value === "custom") advanced.open = true;
  }),
);
form.querySelectorAll("input[name=networks]").forEach((box) =>
  box.addEventListener("change", () => {
    const custom = form.querySelector("input[name=network_set][value=custom]");
    if (custom) custom.checked = true;
  }),
);
showStage(false);
