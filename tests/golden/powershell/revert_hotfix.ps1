param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'revert_hotfix'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: puts back exactly the files the hotfix replaced, from the
    # backup apply_hotfix made on the Var volume (hash-checked), deletes the files it added, removes the
    # hotfix from the ledger and then the backup. With no backup and no ledger entry it changes nothing.
    $Vm = 'NDXZOOM'
    $HotfixId = 'HF-2026C1-001'
    $BackupRel = 'imaging/hotfix-backups/2026C1.0-ab12cd34/HF-2026C1-001'
    $Ledger = 'C:\Instrument\Var\imaging\hotfixes.json'
    $Generation = '2026C1.0-ab12cd34'
    $AppsLink = 'C:\Instrument\Apps'
    $request = ConvertTo-Json -Compress -InputObject ([ordered]@{
        id = $HotfixId; backup_rel = $BackupRel; ledger = $Ledger; generation = $Generation; apps = $AppsLink
    })
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $r = ConvertFrom-Json -InputObject $RequestJson
        $apps = (Get-Item -LiteralPath ([string]$r.apps)).FullName
        $var = Split-Path -Path (Split-Path -Path ([string]$r.ledger) -Parent) -Parent
        $backup = Join-Path -Path $var -ChildPath (([string]$r.backup_rel).Replace('/', '\'))
        $listing = Join-Path -Path $backup -ChildPath 'backup.json'
        $ledger = $null
        $entry = $null
        if (Test-Path -LiteralPath $r.ledger -PathType Leaf) {
            $ledger = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($r.ledger))
            if ($null -ne $ledger.generations.PSObject.Properties[$r.generation]) { $entry = $ledger.generations.($r.generation).PSObject.Properties[$r.id] }
        }
        if (-not (Test-Path -LiteralPath $listing -PathType Leaf)) {
            if ($null -ne $entry) { throw "the backup of $($r.id) ($($r.backup_rel)) is missing; cannot revert" }
            return 'unchanged'
        }
        $saved = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($listing))
            function Assert-NotLoaded([string] $AppsLink, [string[]] $Paths) {
                # Windows refuses to replace a running EXE or a loaded DLL. Refuse before anything changes,
                # naming each file and the process that holds it, so the package can name its service under
                # 'restart' (stopped before the files are replaced, started after). The Apps volume is seen
                # through its link and at its mount folder: a module's path may read either way.
                $roots = @([string]$AppsLink)
                $item = Get-Item -LiteralPath $AppsLink -Force
                if (($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) { $roots += [string]@($item.Target)[0] }
                $wanted = @{}
                foreach ($p in $Paths) {
                    foreach ($root in $roots) { $wanted[(Join-Path -Path $root -ChildPath $p.Replace('/', '\')).ToLowerInvariant()] = $p }
                }
                $busy = New-Object System.Collections.Generic.List[string]
                foreach ($proc in @(Get-Process)) {
                    $modules = @()
                    try { $modules = @($proc.Modules) } catch { $modules = @() }
                    foreach ($m in $modules) {
                        $file = ([string]$m.FileName).ToLowerInvariant()
                        if ($wanted.ContainsKey($file)) { $busy.Add("$($wanted[$file]) (loaded by $($proc.ProcessName), pid $($proc.Id))") }
                    }
                }
                if ($busy.Count -gt 0) {
                    throw ((@($busy.ToArray()) -join ', ') + ": a running program's file cannot be replaced; nothing was changed. Name its service under 'restart' in hotfix.yaml: it is stopped before the files are replaced and started after")
                }
            }
            Assert-NotLoaded ([string]$r.apps) @(@($saved.files) | ForEach-Object { [string]$_.path })
        foreach ($f in @($saved.files)) {
            $target = Join-Path -Path $apps -ChildPath ([string]$f.path).Replace('/', '\')
            if ($null -eq $f.previous_sha256) {
                if (Test-Path -LiteralPath $target -PathType Leaf) { Remove-Item -LiteralPath $target -Force }
                continue
            }
            $copy = Join-Path -Path (Join-Path -Path $backup -ChildPath 'files') -ChildPath ([string]$f.path).Replace('/', '\')
            if ((Get-FileHash -LiteralPath $copy -Algorithm SHA256).Hash.ToLowerInvariant() -ne [string]$f.previous_sha256) {
                throw "the backup of $($f.path) does not match its recorded sha256"
            }
            Copy-Item -LiteralPath $copy -Destination ($target + '.hotfix-partial') -Force
            Move-Item -LiteralPath ($target + '.hotfix-partial') -Destination $target -Force
        }
        if ($null -ne $entry) {
            $ledger.generations.($r.generation).PSObject.Properties.Remove($r.id)
            $text = ConvertTo-Json -Depth 8 -InputObject $ledger
            [System.IO.File]::WriteAllText($r.ledger + '.partial', $text, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
            Move-Item -LiteralPath ($r.ledger + '.partial') -Destination $r.ledger -Force
        }
        Remove-Item -LiteralPath $backup -Recurse -Force
        'reverted'
    }
    $Result['changed'] = ([string]$answer -eq 'reverted')
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
