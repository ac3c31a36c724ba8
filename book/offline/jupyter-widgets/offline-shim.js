/* qlora-lab: let the vendored @jupyter-widgets/html-manager work offline with MathJax 3.
 *
 * Loaded just before embed-amd.js (see nb_ipywidgets_js in _config.yml):
 * 1. embed-amd.js resolves its font files against the AMD module ids, i.e. relative to
 *    the page; map those ids onto this folder (and set __jupyter_widgets_assets_path__,
 *    which some of the bundles in embed-amd.js read).
 * 2. html-manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue);
 *    the book loads MathJax 3, so map that call onto MathJax.typesetPromise.
 */
(function () {
  "use strict";
  var here = document.currentScript.src;
  var folder = here.slice(0, here.lastIndexOf("/") + 1);
  window.__jupyter_widgets_assets_path__ = folder;
  // The bundles in embed-amd.js compute their webpack public path (where the Font
  // Awesome fonts are) from their AMD module URI: map every module id into this folder.
  if (window.requirejs) {
    var paths = { "@jupyter-widgets/html-manager/dist": folder.slice(0, -1) };
    ["base", "base7", "controls", "controls7", "output", "html-manager"].forEach(function (name) {
      paths["@jupyter-widgets/" + name] = folder + name;
    });
    window.requirejs.config({ paths: paths });
  }

  function typeset(element) {
    if (!window.MathJax || !MathJax.startup || !MathJax.typesetPromise) return;
    MathJax.startup.promise.then(function () { return MathJax.typesetPromise([element]); });
  }

  // MathJax 3 replaces window.MathJax when its (deferred) script runs, which happens
  // before DOMContentLoaded; widgets render later, on window "load".
  document.addEventListener("DOMContentLoaded", function () {
    if (!window.MathJax || window.MathJax.Hub) return;
    window.MathJax.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (command) {
          if (Array.isArray(command) && command[0] === "Typeset") typeset(command[2]);
        });
      },
    };
  });
})();
