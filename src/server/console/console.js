// Copy buttons of the kubeconfig page: each button[data-copy] copies the text of the element
// whose id it names and reports the outcome in #copy-status. Without script the buttons stay
// hidden and the text can be selected by hand.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("copy-status");
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(source.textContent);
        status.textContent = "Copied.";
      } catch {
        status.textContent = "Copying is not allowed here; select the text and copy it by hand.";
      }
    });
  }
});
