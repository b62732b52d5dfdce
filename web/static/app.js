// parallax web: the only script. Pages work without it; it adds
// auto-refresh (paused while you type in a form) and Ctrl+Enter in the SQL
// console.
(function () {
  var me = document.currentScript;
  var every = parseInt(me && me.getAttribute("data-refresh"), 10) || 0;
  var editing = false;
  document.addEventListener("input", function () { editing = true; });
  document.addEventListener("focusin", function (e) {
    if (e.target.form) { editing = true; }
  });
  if (every > 0 && !document.getElementById("console")) {
    setInterval(function () {
      var state = document.getElementById("refresh-state");
      if (editing) {
        if (state) { state.textContent = "(paused while editing)"; }
        return;
      }
      location.reload();
    }, every * 1000);
  }
  var text = document.getElementById("sql-text");
  if (text) {
    text.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        document.getElementById("sql-form").submit();
      }
    });
  }
})();
