// The user portal: a Copy button before each snippet. Every page reads and
// works without this script; it only saves selecting the text.
"use strict";
document.querySelectorAll("pre > code").forEach(function (code) {
  if (!navigator.clipboard) {
    return;
  }
  var button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(code.textContent).then(function () {
      button.textContent = "Copied";
      setTimeout(function () {
        button.textContent = "Copy";
      }, 1500);
    });
  });
  code.parentNode.parentNode.insertBefore(button, code.parentNode);
});
