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

$ImagingAction = 'read_guest_files'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the running guest, over PowerShell Direct, read only: each path's file, or every file under its
    # folder, as a program there sees them (through the links). A running VM holds its disks, so Hyper-V
    # will not mount them on the host: this is how the deployed settings (drift) and the instrument's own
    # record and hotfix ledger on Var are read while it runs. A path that does not exist is left out; more
    # than max_bytes in all is refused (only small folders are read this way). A file larger than hash_over
    # (when given) is not sent back: only its sha256, under 'hashed' (a large calibration blob is compared
    # by hash).
    $Vm = 'NDXZOOM'
    $Paths = @('C:\Instrument\Settings', 'C:\Instrument\Var\imaging\record.json')
    $MaxBytes = [long]67108864
    $HashOver = [long]4194304
    $request = ConvertTo-Json -Compress -InputObject ([ordered]@{ paths = @($Paths); max_bytes = $MaxBytes; hash_over = $HashOver })
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $r = ConvertFrom-Json -InputObject $RequestJson
        $found = [ordered]@{}
        $hashed = [ordered]@{}
        $total = [long]0
        foreach ($path in @($r.paths)) {
            $item = Get-Item -LiteralPath ([string]$path) -Force -ErrorAction SilentlyContinue
            if ($null -eq $item) { continue }
            $got = [ordered]@{}
            $big = [ordered]@{}
            $files = @()
            if ($item.PSIsContainer) {
                $root = ([string]$path).TrimEnd('\')
                $files = @(Get-ChildItem -LiteralPath $root -Recurse -File -Force |
                    Where-Object { ($_.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -eq 0 } |
                    ForEach-Object { @{ rel = $_.FullName.Substring($root.Length + 1).Replace('\', '/'); full = $_.FullName } })
            }
            else { $files = @(@{ rel = ''; full = $item.FullName }) }
            foreach ($f in $files) {
                if ([long]$r.hash_over -gt 0 -and (Get-Item -LiteralPath $f.full -Force).Length -gt [long]$r.hash_over) {
                    $big[$f.rel] = (Get-FileHash -LiteralPath $f.full -Algorithm SHA256).Hash.ToLowerInvariant()
                    continue
                }
                $bytes = [System.IO.File]::ReadAllBytes($f.full)
                $total += $bytes.Length
                if ($total -gt [long]$r.max_bytes) { throw "$path holds more than $($r.max_bytes) bytes; only small folders are read this way" }
                $got[$f.rel] = [System.Convert]::ToBase64String($bytes)
            }
            $found[[string]$path] = $got
            $hashed[[string]$path] = $big
        }
        ConvertTo-Json -Compress -Depth 5 -InputObject ([ordered]@{ found = $found; hashed = $hashed })
    }
    $answered = ConvertFrom-Json -InputObject ([string]$answer)
    $Result['found'] = $answered.found
    $Result['hashed'] = $answered.hashed
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
